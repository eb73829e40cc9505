"""`olive run --config FILE` with fixes for two Olive 0.13 bugs; run with Olive's venv's Python.

With this environment's pydantic (2.14), Olive 0.13 cannot run a workflow whose evaluator has a
``type: custom`` metric, and silently drops every metric's ``user_config`` (so a latency metric's
``inference_settings``, e.g. its thread count, are ignored):

1. a custom metric's ``backend`` and its sub-types' ``metric_config`` are None, and
   ``Metric.serialize_backend`` / ``SubMetric.serialize_metric_config`` call ``.model_dump()`` on
   them when ``olive run`` writes the run config into its cache (``PydanticSerializationError:
   ... 'NoneType' object has no attribute 'model_dump'``): both serializers now return None for
   None (the function objects pydantic's schemas hold are patched in place);
2. the engine is built from ``model_dump()`` of its config (``RunEngineConfig.create_engine``,
   ``OliveCache.prepare_resources_for_local``), and pydantic serializes ``Metric.user_config`` by
   its declared type (``ConfigBase``, no fields), so ``evaluate_func`` and ``inference_settings``
   are lost ("evaluate_func or metric_func is not specified in the metric config"): Olive's
   ``ConfigBase.model_dump`` now defaults to ``serialize_as_any=True`` (each object dumped with
   its own fields, what Olive expects).

Nothing else is changed; then Olive's own command line runs. Both scenarios of
benchmarks/olive_compare.py start Olive through this launcher.
"""

import sys
from typing import Any

from olive.common.config_utils import ConfigBase
from olive.evaluator.metric import Metric, SubMetric
from pydantic import BaseModel


def _none_safe(self, value):
    return value if value is None or isinstance(value, str) else value.model_dump()


def _dump_as_any(self, **kwargs: Any) -> dict[str, Any]:
    return BaseModel.model_dump(self, **{"serialize_as_any": True, **kwargs})


for cls, name in ((Metric, "serialize_backend"), (SubMetric, "serialize_metric_config")):
    cls.__pydantic_decorators__.field_serializers[name].func.__code__ = _none_safe.__code__
ConfigBase.model_dump = _dump_as_any

if __name__ == "__main__":
    from olive.cli.launcher import main

    sys.argv[0] = "olive"
    sys.exit(main())
