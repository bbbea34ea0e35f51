"""The reverse proxy to the console: what is forwarded, the two clients behind one ``Answer`` (``answer``: the
rules both keep), the relay back to the client byte-exact, and websockets."""
