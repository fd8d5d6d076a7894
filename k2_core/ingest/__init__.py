"""The rules a batch goes through on its way in: sequence tracking (sessions, duplicates, gaps, late fills), dedup state
built from the tables, gap records, the degradation cascade and fenced micro-batch appends.
"""
