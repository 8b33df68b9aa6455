"""What every part of the gateway stands on: tokens and the caller (``auth``), the async store
(``db``), JSON error replies (``errors``) and the typed application keys (``keys``)."""
