"""What the data is: topics, table definitions (every schema in one place), the schema registry, Avro, the rules a
record must meet, bars and day partitions. Imports nothing else from k2_core but settings, exceptions and logging.
"""
