"""Data fixtures shared by every test (tiny zoo, key pair)."""
