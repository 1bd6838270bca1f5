"""The machinery both executor plugins build on (``executor_fork``, ``executor_spawn_windows``).

Not a plugin itself (no entry point, no ``hooks.py``): a library of the plugin side, so that the core
keeps only the :class:`~dispy_core.interfaces.JobExecutor` protocol. The node-side
:class:`~dispy_plugins.executor_host.client.HostExecutor` starts one host process per computation
(``python -m dispy_plugins.executor_host.host fork|spawn``: :mod:`host`, with its fork server
:mod:`zygote`), which runs each job in a process of its own (:mod:`runtime`, :mod:`jobmain`).
"""
