"""Studies of the G-metaD method: property recipes that any ASE calculator can run.

``studies.properties`` holds the generic building blocks (relaxations with a fixed
criterion, surface and defect energies, NEB barriers); ``studies.si_properties``
the diamond-silicon recipes of the paper's Fig. 4 with their Stillinger-Weber
reference values.
"""
