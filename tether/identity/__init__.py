"""Identity: who a caller is, and how Tether's own services prove who they are.

The APIs learn the caller from an :class:`tether.api.auth.Authenticator`
(``[api] auth_strategy``); a service calling another side's API (compute to
block storage, block storage to compute) sends the token a
:class:`~tether.identity.credentials.TokenSource` gives it.
"""
