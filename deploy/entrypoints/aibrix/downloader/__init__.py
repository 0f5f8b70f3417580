"""``aibrix.downloader``: see ``__main__``."""
