"""Authentication: password hashes, signed session cookies, API and cluster tokens."""
