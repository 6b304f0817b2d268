"""The protocols a live tool speaks in a warm session, one module each.

A transport frames and maps messages; spawning and killing stay in `llmrun.process`.
"""
