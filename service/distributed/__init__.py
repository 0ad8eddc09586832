"""Scale-out over Redis (DESIGN §4): gateways put image jobs on a Stream per backend, workers run them;
cameras are leased to workers, their results fanned out by every gateway.

- `transport`: the `ImageJobs` interface `POST /v1/pose` uses, and `InProcessJobs` (the default);
- `redis_jobs`: key names, job and reply wire formats, reply deduplication (pure logic);
- `link`: a process's Redis client, its connection state, reconnection backoff;
- `gateway`: `RedisJobs`, the gateway's `ImageJobs` over Redis;
- `worker`: `JobWorker`, which takes jobs, runs them in batches, replies and acknowledges;
- `cameras`: `/v1/streams` behind the `Cameras` interface: in-process, or the Redis registry with
  a gateway's WebSocket fan-out; `camera_worker`: a worker's leased cameras;
- `run`: the `poseserve worker` process.
"""
