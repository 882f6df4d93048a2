"""Hostile and unusual input: every user error is one line naming what was wrong, nothing is written."""
