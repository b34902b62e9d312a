"""Everything that works only with Redis / Valkey: the transports, their connections, and
the near cache with the server-side tracking that invalidates it.

``transport`` holds the two transport classes, ``lua/`` their scripts, ``connections``
the connections they send scripts on, ``resp`` the protocol bytes, ``tracking`` the
connections that receive the server's invalidations, and ``near`` the near cache itself.
"""
