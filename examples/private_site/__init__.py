"""A private tracker site: Flask + SQLite, passkeys, ratio accounting (docs/ACCESS.md)."""
