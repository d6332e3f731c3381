"""Domain logic. Services take a Session and flush; they never commit."""
