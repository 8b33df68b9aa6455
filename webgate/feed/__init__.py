"""The live feed, in the order the data takes: the stream reader (``stream``) reads
``{prefix}:events`` -> the hub (``hub``) routes each event to the subscribed connections ->
frames (``frames``) encode it once -> the WebSocket endpoint (``endpoint``) serves the sockets
and the JavaScript client (``static/tracker-client.js``); ``replay_bound`` bounds resumes."""
