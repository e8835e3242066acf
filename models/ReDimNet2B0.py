"""ReDimNet2-B0 (models/ReDimNet2Family.py; stage table SIZES["B0"]): the authors' size B0, 72 mel bins."""
from models.ReDimNet2Family import REDIMNET2_OPTIONS, redimnet2

OPTIONS = dict(REDIMNET2_OPTIONS)
MainModel = redimnet2("B0")
