"""``dispynetrelay``: discovery across networks. ``relay.py`` has the sockets and what passes where,
``table.py`` what the relay remembers (bounded), ``cli.py`` the command and ``console.py`` its console."""
