"""The web monitor (``dispy.httpd.DispyHTTPServer``, ``dispyscheduler --httpd``) and the web base it shares with
``dispyadmin``: ``web.py`` (server, routes, JSON) and ``websecurity.py`` (loopback, token, CSRF, TLS)."""
