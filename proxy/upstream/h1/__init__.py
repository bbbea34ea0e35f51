"""The lean HTTP/1.1 client: the exchange on one connection, the pool that caps them, the request head."""
