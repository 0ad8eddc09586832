"""Scale-out over Redis (DESIGN §4): gateways put image jobs on a Stream per backend, workers run them.

- `transport`: the `ImageJobs` interface `POST /v1/pose` uses, and `InProcessJobs` (the default);
- `redis_jobs`: key names, job and reply wire formats, reply deduplication (pure logic);
- `link`: a process's Redis client, its connection state, reconnection backoff;
- `gateway`: `RedisJobs`, the gateway's `ImageJobs` over Redis;
- `worker`: `JobWorker`, which takes jobs, runs them in batches, replies and acknowledges;
- `run`: the `poseserve worker` process.
"""
