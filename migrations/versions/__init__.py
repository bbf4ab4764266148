"""Revisions, oldest first (0001_...); a package so that wheels ship them."""
