"""Study completeness: the timers that judge a study complete when no evidence says so
(the quiet rule, the MPPS give-up time). The evidence itself is recorded in
``agent.archive.studies`` (``Archive.studies``), in the archive's transactions."""
