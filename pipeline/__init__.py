"""slg: Scaling-Law Guided search, on Ray.

Packages by role, each importing only those before it: ``stats`` (the statistics: tail fit,
best-of-n prediction, pool maxima, schedules), ``search`` (the policies and their round protocol),
``offline`` (worlds, banks, replay, calibration), ``distributed`` (the driver, replica pools, Ray
sessions, the engine contract), ``jobs`` (run, collect, bench, their config), ``toy`` (the toy task
and its models), ``cli`` (the ``slg`` command). ``outputs`` (files and URLs) sits below them all.
``tail``, ``schedule`` and ``oracle`` are the public import paths of the documented Python API.
"""
