"""Model fixtures shared by every test (trained backbone bundle, heads)."""
