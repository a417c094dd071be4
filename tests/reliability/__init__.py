"""Reliability promises: each module starts and stops real processes and checks one promise."""
