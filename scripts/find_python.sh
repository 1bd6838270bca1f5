# Sourced by the scripts: find_python X.Y prints a working interpreter for that version, or nothing.
find_python() {
  local version="$1" candidate
  for candidate in "python$version" /root/.pyenv/versions/"$version".*/bin/python"$version" \
                   /usr/local/bin/python"$version" /usr/bin/python"$version"; do
    for path in $candidate; do
      if [ -x "$(command -v "$path" 2>/dev/null)" ] && "$path" -c 'import sys' >/dev/null 2>&1; then
        command -v "$path"
        return 0
      fi
    done
  done
  return 1
}
