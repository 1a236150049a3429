"""Benchmarks that print figures (``meshgate bench`` runs them all); tests never time anything."""
