"""openpi's websocket policy protocol (the `openpi-client` package's `WebsocketClientPolicy`): msgpack
frames with numpy arrays, the server's metadata first, then one action chunk per observation."""
