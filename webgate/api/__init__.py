"""The REST API under ``/api/v1/progress``: one aiohttp route table per endpoint module, the leaf
they share (``common``), the schemas (``schema``) and the factory that mounts them (``factory``)."""
