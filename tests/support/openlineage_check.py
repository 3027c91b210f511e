"""Checks OpenLineage events (one JSON object per line) against the models
of the official OpenLineage Python client, which are generated from the
OpenLineage JSON schema: each event is rebuilt as a client RunEvent with
typed facets (the client's validators check the event time, the run id and
the URLs), serialized back, and must equal the event as tidewater wrote it.
Facets tidewater does not write are refused, so every facet is checked.

usage: openlineage_check.py EVENTS.jsonl  -> prints "ok <n>" or fails
"""

import json
import sys

from openlineage.client.generated import base
from openlineage.client.generated import error_message_run
from openlineage.client.generated import job_type_job
from openlineage.client.generated import output_statistics_output_dataset as output_stats
from openlineage.client.generated import parent_run
from openlineage.client.generated import schema_dataset
from openlineage.client.serde import Serde


def facet(cls, raw, **nested):
    args = {k: v for k, v in raw.items() if not k.startswith("_")}
    args.update(nested)
    built = cls(**args, producer=raw["_producer"])
    if built._schemaURL != raw["_schemaURL"]:
        raise ValueError(f"{cls.__name__}: _schemaURL {raw['_schemaURL']} is not {built._schemaURL}")
    return built


def run_facets(raw):
    out = {}
    for name, value in raw.items():
        if name == "parent":
            out[name] = facet(
                parent_run.ParentRunFacet,
                value,
                run=parent_run.Run(**value["run"]),
                job=parent_run.Job(**value["job"]),
            )
        elif name == "errorMessage":
            out[name] = facet(error_message_run.ErrorMessageRunFacet, value)
        else:
            raise ValueError(f"unexpected run facet {name}")
    return out


def job_facets(raw):
    out = {}
    for name, value in raw.items():
        if name != "jobType":
            raise ValueError(f"unexpected job facet {name}")
        out[name] = facet(job_type_job.JobTypeJobFacet, value)
    return out


def dataset_facets(raw):
    out = {}
    for name, value in raw.items():
        if name != "schema":
            raise ValueError(f"unexpected dataset facet {name}")
        fields = [schema_dataset.SchemaDatasetFacetFields(**f) for f in value["fields"]]
        out[name] = facet(schema_dataset.SchemaDatasetFacet, value, fields=fields)
    return out


def output_facets(raw):
    out = {}
    for name, value in raw.items():
        if name != "outputStatistics":
            raise ValueError(f"unexpected output facet {name}")
        out[name] = facet(output_stats.OutputStatisticsOutputDatasetFacet, value)
    return out


def dataset(cls, raw, **extra):
    return cls(
        namespace=raw["namespace"],
        name=raw["name"],
        facets=dataset_facets(raw.get("facets", {})),
        **extra,
    )


def rebuild(raw):
    allowed = {"eventType", "eventTime", "run", "job", "inputs", "outputs", "producer", "schemaURL"}
    extra = set(raw) - allowed
    if extra:
        raise ValueError(f"keys the schema does not have: {extra}")
    event = base.RunEvent(
        eventType=base.EventType(raw["eventType"]),
        eventTime=raw["eventTime"],
        run=base.Run(runId=raw["run"]["runId"], facets=run_facets(raw["run"].get("facets", {}))),
        job=base.Job(
            namespace=raw["job"]["namespace"],
            name=raw["job"]["name"],
            facets=job_facets(raw["job"].get("facets", {})),
        ),
        inputs=[dataset(base.InputDataset, d) for d in raw.get("inputs", [])],
        outputs=[
            dataset(base.OutputDataset, d, outputFacets=output_facets(d.get("outputFacets", {})))
            for d in raw.get("outputs", [])
        ],
        producer=raw["producer"],
    )
    if event.schemaURL != raw["schemaURL"]:
        raise ValueError(f"schemaURL {raw['schemaURL']} is not {event.schemaURL}")
    return Serde.to_dict(event)


def pruned(value):
    """The value without empty objects and lists (the client writes some)."""
    if isinstance(value, dict):
        out = {k: pruned(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def main():
    count = 0
    with open(sys.argv[1]) as lines:
        for number, line in enumerate(lines, 1):
            raw = json.loads(line)
            try:
                again = rebuild(raw)
            except Exception as err:  # noqa: BLE001 - reported with the event
                sys.exit(f"event {number} does not fit the OpenLineage models: {err!r}\n{line}")
            if pruned(again) != pruned(raw):
                sys.exit(
                    f"event {number} changes when rebuilt by the client:\n"
                    f"  written: {json.dumps(pruned(raw), sort_keys=True)}\n"
                    f"  rebuilt: {json.dumps(pruned(again), sort_keys=True)}"
                )
            count += 1
    print(f"ok {count}")


main()
