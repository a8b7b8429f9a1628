"""The streaming service (issue 11): durable queues of new classes and their producers.

* :mod:`~mmf_stream.service.queue`: the embedded durable queue (SQLite in the project);
* :mod:`~mmf_stream.service.redis_queue`: the Redis Streams queue (``redis://HOST:PORT/DB``; needs the
  ``redis`` extra);
* :mod:`~mmf_stream.service.backends`: which queue a ``--queue`` value names (``open_queue``), the
  interface every queue offers, and the project's stable id;
* :mod:`~mmf_stream.service.submit`: ``submit``, the producers' side;
* :mod:`~mmf_stream.service.messages`: what a consumer accepts (or dead-letters, with the reason).

The coordinator (``mmf-stream serve``) comes next.
"""
