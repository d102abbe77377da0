"""Collected logs on the leader: ``aliyun.log_store_<name>`` lines from every node, to sinks.

Agents collect what a service's log stores name (agent/logship.py) and ship batches with their
session (``ShipLogs``); the dispatcher keeps only lines of the shipping node's own tasks and hands
them to the :class:`~shoal.logstore.collector.LogCollector`, which fans them out to its sinks, each
with its own bounded queue (a slow Loki never holds the file sink back, and never the dispatcher):

- files (always on): ``<data-root>/logstore/<service>/<store>.log``, one JSON record a line, rotated
  by size (files.py); ``shoal logs query`` reads them (query.py);
- the sinks users add (``shoal logs sink add``; kept in the store so a new leader keeps sending):
  Loki's push API, Elasticsearch's bulk API, or files in another directory (sinks.py).
"""
