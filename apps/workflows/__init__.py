"""Multi-agent workflows: agents are processes that cooperate through spawn, wait, messages
and topics, in four tested patterns, and a file format to describe one.

- `pipeline`: each agent's output feeds the next; a step may ask the user (human in the loop).
- `supervisor`: a router agent hands each task to a specialist; specialists may hand off.
- `debate`: a writer and a critic exchange drafts and critiques for some rounds.
- `mapreduce`: N workers on the parts of a task at once, one reducer.

Every agent's turn is published on the workflow's topic, so any process (or the shell) can
follow a run as it happens. All agents share the one model engine, so their generation is
batched.
"""

from llmos.apps.workflows.agent import Agent, agent
from llmos.apps.workflows.debate import debate
from llmos.apps.workflows.mapreduce import mapreduce
from llmos.apps.workflows.pipeline import pipeline
from llmos.apps.workflows.supervisor import supervisor

__all__ = ["Agent", "agent", "debate", "mapreduce", "pipeline", "supervisor"]
