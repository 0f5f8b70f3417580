"""AIBrix's package name, only so that ``python -m aibrix.downloader`` runs Patio's downloader."""
