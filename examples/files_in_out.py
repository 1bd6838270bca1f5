"""Files both ways: ``depends=`` sends an input file to every node; a job sends a file back.

    python examples/files_in_out.py

A file in ``depends`` lands in the computation's directory on each node (a job's working directory); a
relative path keeps its directories. ``dispy_send_file(path)`` in a job sends a file to the client, where
it lands under the client's current directory with the same relative path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from _local import example_nodes

import dispy


def scale(factor: int) -> int:
    """Reads the input the client sent, writes a scaled copy and sends it back."""
    with open("numbers.txt") as handle:
        numbers = [int(line) for line in handle]
    name = f"scaled-{factor}.txt"
    with open(name, "w") as handle:
        handle.write("\n".join(str(n * factor) for n in numbers) + "\n")
    dispy_send_file(name)  # noqa: F821 - the node gives every job this function
    return sum(numbers) * factor


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dispy-files-") as work:
        os.chdir(work)  # files jobs send back land here
        Path("numbers.txt").write_text("1\n2\n3\n4\n")
        with example_nodes(1) as where:
            with dispy.JobCluster(scale, nodes=where.nodes, secret=where.secret, depends=["numbers.txt"]) as cluster:
                jobs = {factor: cluster.submit(factor) for factor in (2, 3, 10)}
                totals = {factor: job() for factor, job in jobs.items()}
        for factor, total in totals.items():
            returned = Path(f"scaled-{factor}.txt").read_text().split()
            print(f"factor {factor}: total {total}, file sent back: {returned}")
            assert returned == [str(n * factor) for n in (1, 2, 3, 4)] and total == 10 * factor
        os.chdir(Path.home())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
