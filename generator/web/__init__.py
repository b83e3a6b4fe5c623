"""The web side: pages, the JSON API, the progress streams and their hub."""
