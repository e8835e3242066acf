"""ReDimNet-B0 (models/ReDimNetFamily.py; stage table SIZES["B0"]): the authors' size B0, 60 mel bins."""
from models.ReDimNetFamily import REDIMNET_OPTIONS, redimnet

OPTIONS = dict(REDIMNET_OPTIONS)
MainModel = redimnet("B0")
