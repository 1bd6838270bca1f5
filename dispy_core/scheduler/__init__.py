"""dispyscheduler: many client programs share one set of nodes (Shared Execution).

``front.py`` accepts clients and looks like one big node to each; ``backend.py`` drives the real nodes for
each computation a client opens, with the client's own machinery (``ClusterState``, ``NodeLife``,
``ClientDriver``); ``cli.py`` is the command.
"""
