"""`alignd`, the operator's command line: serve, worker, migrate, keys, models (DESIGN §8).

Its own package, above api/ and worker/: it starts the API and the worker, so it imports both, and
neither imports it (nor does api/ import worker/).
"""
