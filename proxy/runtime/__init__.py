"""The running process: the active config and what outlives it (``state``), where the config comes from
(``source``), the validated swap (``reload``) and what triggers it (``watch``)."""
