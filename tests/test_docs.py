"""The guide shows the YAML reference as the code documents it."""
import os

import biasserver.config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_guide_shows_the_configuration_docstring():
    doc = biasserver.config.__doc__
    reference = doc[doc.index("Example (all lengths"):doc.index("Errors name the file")]
    guide = open(os.path.join(ROOT, "docs", "guide.md")).read()
    assert reference in guide, "docs/guide.md: the YAML section differs from biasserver/config.py's docstring"
