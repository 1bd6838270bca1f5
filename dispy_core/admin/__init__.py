"""dispyadmin: administer dispynodes with their --admin_secret (see cli.py; the node side: node/admin.py)."""
