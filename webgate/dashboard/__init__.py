"""The dashboard: the page (``page``) and the files it loads (``static/``)."""
