"""The streaming service (issue 11): durable queues of new classes and their producers.

* :mod:`~mmf_stream.service.queue`: the embedded durable queue (SQLite in the project);
* :mod:`~mmf_stream.service.submit`: ``submit``, the producers' side;
* :mod:`~mmf_stream.service.messages`: what a consumer accepts (or dead-letters, with the reason).

The coordinator (``mmf-stream serve``) and the Redis Streams queue come next.
"""
