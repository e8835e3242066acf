"""ReDimNet2-B3 (models/ReDimNet2Family.py; stage table SIZES["B3"]): the authors' size B3, 72 mel bins."""
from models.ReDimNet2Family import REDIMNET2_OPTIONS, redimnet2

OPTIONS = dict(REDIMNET2_OPTIONS)
MainModel = redimnet2("B3")
