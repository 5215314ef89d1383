"""Catching a rented login while it is used: signals read off the audit stream, and what they do."""
