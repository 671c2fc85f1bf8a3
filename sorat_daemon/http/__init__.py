"""The ASGI surface: the guard every request passes (Host, Origin, token, CORS), the streaming endpoint
machinery (body limits, settle, reply, disconnect watch, access log) written once, one thin endpoint per
protocol, and the admin routes on Quart. Nothing here knows what a protocol's JSON means: that is
``sorat_daemon.protocols``."""
