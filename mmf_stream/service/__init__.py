"""The streaming service (docs/service.md): the coordinator, the project's generations, queues, producers.

* :mod:`~mmf_stream.service.coordinator`: ``serve`` and ``Coordinator`` (``mmf-stream serve``);
* the project's generations (copy-on-write layers, the commit log, recovery) are persistence:
  :mod:`mmf_stream.store.generations`;
* :mod:`~mmf_stream.service.status`: ``project_status`` (``mmf-stream status``);

* :mod:`~mmf_stream.service.queues.embedded`: the embedded durable queue (SQLite in the project);
* :mod:`~mmf_stream.service.queues.redis_streams`: the Redis Streams queue (``redis://HOST:PORT/DB``; needs the
  ``redis`` extra);
* :mod:`~mmf_stream.service.queues.protocol`: ``QueueBackend``, the interface every queue offers;
* :mod:`~mmf_stream.service.queues.backends`: which queue a ``--queue`` value names (``open_queue``) and the
  project's stable id;
* :mod:`~mmf_stream.service.submit`: ``submit``, the producers' side;
* :mod:`~mmf_stream.service.messages`: what a consumer accepts (or dead-letters, with the reason).
"""
