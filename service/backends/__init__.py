"""Loaded backends: pipelines, inference sessions and `StageRunner`s, behind one `infer` coroutine.

- `sessions`: inference sessions from the weights store, warm-up, one batched run;
- `base`: `LoadedBackend`, what the API and the stream scheduler use (`prepare`, `await infer`);
- `single_stage`: image -> one batched model run (stage "pose") -> persons;
- `topdown`: image -> detector (stage "detect") -> crops -> pose model (stage "pose");
- `manager`: `BackendManager`, which loads backends by catalogue name, once.
"""

from service.backends.base import LoadedBackend, Prepared
from service.backends.manager import BackendManager
from service.backends.single_stage import SingleStageBackend
from service.backends.topdown import TopDownBackend

__all__ = ["BackendManager", "LoadedBackend", "Prepared", "SingleStageBackend", "TopDownBackend"]
