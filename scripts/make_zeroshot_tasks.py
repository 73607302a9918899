"""Write the project's own zero-shot tasks: resources/tasks/<task>/<task>.{yaml,jsonl}.

The items below were written for this project (none is copied from a published benchmark):
everyday physical commonsense, simple arithmetic and word facts, and Python-documentation
questions, each answerable by common knowledge with exactly one correct choice. Every item is
listed with its correct answer first; a seeded shuffle places it, so the files are reproducible:

    python scripts/make_zeroshot_tasks.py            # rewrite the files
    python scripts/make_zeroshot_tasks.py --check    # exit 1 if the files differ from this script
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SEED = 0

# "How can you <goal>?" -> (correct way, wrong way)
PHYSICAL = [
    ("keep ice cream from melting on the way home from the shop",
     "Put it in an insulated bag with ice packs.", "Put it in a paper bag on the sunny dashboard."),
    ("dry a wet towel quickly", "Hang it spread out in a warm, breezy place.",
     "Fold it tightly and leave it in a closed drawer."),
    ("open a jar whose lid is stuck", "Grip the lid with a rubber glove and twist it.",
     "Pour cooking oil over the lid and then twist it."),
    ("see better in a dark room", "Switch on a lamp.", "Close the curtains."),
    ("cool a hot bowl of soup faster", "Stir it and pour it into a wide, shallow dish.",
     "Cover it with a thick blanket."),
    ("carry water from a well", "Use a bucket.", "Use a sieve."),
    ("keep bread fresh for longer", "Store it in a sealed bag.",
     "Leave it uncovered on the counter."),
    ("stop a door from slamming in the wind", "Put a doorstop under it.",
     "Open the window beside it wider."),
    ("make a paper airplane fly farther", "Fold it with sharp, even creases.",
     "Crumple it into a ball first."),
    ("light a candle", "Hold a burning match to its wick.", "Pour water on its wick."),
    ("make a bicycle tyre firmer", "Pump more air into it.", "Let some air out of it."),
    ("keep a house plant alive", "Water it regularly and place it near a window.",
     "Keep it in a dark cupboard without water."),
    ("melt butter", "Warm it gently in a pan.", "Put it in the freezer."),
    ("find a lost earring on a carpet", "Shine a flashlight low across the carpet.",
     "Turn off all the lights in the room."),
    ("keep your feet dry in the rain", "Wear waterproof boots.",
     "Wear cotton socks without shoes."),
    ("cut a sheet of paper in half neatly", "Fold it and cut along the fold with scissors.",
     "Soak it in water and pull it apart."),
    ("make a cup of tea", "Pour boiling water over a tea bag.",
     "Pour cold water over a tea bag and drink it at once."),
    ("keep a drink cold at a picnic", "Put it in a cooler with ice.",
     "Leave it in the sun on a dark blanket."),
    ("wake up early", "Set an alarm clock.", "Unplug every clock in the house."),
    ("warm up cold hands", "Rub them together.", "Hold them under cold running water."),
    ("keep a tablecloth from blowing away outdoors", "Put heavy plates on its corners.",
     "Tie balloons to its corners."),
    ("fill a balloon with air", "Blow into its opening.", "Poke a small hole in it."),
    ("store leftover soup", "Pour it into a covered container and put it in the fridge.",
     "Leave it in the pot on the stove for a week."),
    ("sharpen a pencil", "Turn it in a pencil sharpener.", "Rub its tip on a pillow."),
    ("read a book at night", "Use a reading light.", "Wear sunglasses."),
    ("carry a heavy box up the stairs more easily", "Take some things out to make it lighter.",
     "Add more things to make it steadier."),
    ("keep mosquitoes out of a bedroom", "Close the window screens.",
     "Leave a bright light on beside an open window."),
    ("boil water faster", "Put a lid on the pot.", "Leave the lid off and turn the heat down."),
    ("get the last ketchup out of a glass bottle", "Turn the bottle upside down and tap it.",
     "Hold the bottle upright with the cap on."),
    ("keep a shoelace from coming undone", "Tie it in a double knot.",
     "Tuck the loose laces into the shoe untied."),
    ("make a stuffy room smell fresher", "Open the windows for a while.",
     "Close the doors and burn some toast."),
    ("keep a phone charged on a long trip", "Bring a charged power bank.",
     "Turn the screen brightness to maximum."),
    ("fix a squeaky door hinge", "Put a few drops of oil on the hinge.",
     "Paint the hinge with glue."),
    ("keep paint brushes soft after painting", "Wash them before the paint dries.",
     "Leave them in the paint tray overnight."),
    ("see your own reflection", "Look into a mirror.", "Look at a brick wall."),
    ("cross a shallow stream without getting your feet wet", "Step on large dry stones.",
     "Walk barefoot along the muddy bottom."),
    ("keep a sandwich from getting squashed in a bag", "Pack it in a hard lunch box.",
     "Put it under a pile of books."),
    ("get a kite into the air", "Run into the wind holding the string.",
     "Hold it still inside the house."),
    ("cool down on a hot day", "Sit in the shade and drink water.",
     "Wear a thick wool coat in the sun."),
    ("save water while brushing your teeth", "Turn off the tap while brushing.",
     "Let the tap run the whole time."),
    ("keep a candle flame from going out outdoors", "Shield it from the wind.",
     "Blow on it gently."),
    ("make ice cubes", "Pour water into a tray and freeze it.",
     "Pour water into a tray and heat it."),
    ("stop a glass from leaving a ring on a wooden table", "Put a coaster under it.",
     "Put it straight on the bare wood."),
    ("carry many groceries at once", "Use a sturdy shopping bag.", "Use a torn paper bag."),
    ("keep milk from going sour", "Keep it in the refrigerator.",
     "Keep it on a sunny windowsill."),
    ("make toast", "Put sliced bread in a toaster.", "Put sliced bread in the freezer."),
    ("wipe up spilled water", "Use a dry paper towel.", "Use a sheet of aluminium foil."),
    ("keep warm in bed on a cold night", "Add an extra blanket.", "Open the window wide."),
    ("stop a rug from sliding on a wooden floor", "Put a rubber mat under it.",
     "Polish the floor under it with wax."),
    ("see the stars more clearly", "Go somewhere far from city lights.",
     "Stand under a bright street lamp."),
    ("cook dry pasta", "Boil it in salted water.", "Soak it in cold water for a minute."),
    ("get juice from a lemon", "Cut it in half and squeeze it.", "Put it whole in the freezer."),
    ("make a shadow puppet on a wall", "Hold your hands between a lamp and the wall.",
     "Hold your hands behind your back in the dark."),
    ("keep a bicycle from being stolen", "Lock it to a fixed rack.",
     "Leave it unlocked beside the road overnight."),
    ("hear someone who speaks quietly", "Move closer to them.", "Cover your ears."),
    ("keep cut flowers fresh", "Put their stems in a vase of water.",
     "Lay them on a hot radiator."),
    ("clean greasy dishes", "Scrub them with warm soapy water.",
     "Wipe them with a dusty cloth."),
    ("write on a chalkboard", "Use a piece of chalk.", "Use a wet sponge."),
    ("float in a swimming pool", "Lie back and spread out your arms.",
     "Hold a heavy stone against your chest."),
    ("keep biscuits crisp", "Store them in an airtight tin.",
     "Store them in an open bowl next to a steaming kettle."),
    ("stop a pot of milk from boiling over", "Turn the heat down.", "Turn the heat up higher."),
    ("protect your eyes from bright sunlight", "Wear sunglasses.", "Stare straight at the sun."),
    ("dig a hole in the garden", "Use a shovel.", "Use a feather."),
    ("stay dry walking in the rain", "Open an umbrella over your head.",
     "Carry a closed umbrella under your arm."),
    ("make a noisy room quieter", "Close the door and the windows.", "Turn the music up."),
    ("make a cheese sandwich", "Put cheese between two slices of bread.",
     "Put the cheese in a glass of water."),
    ("keep your place in a book", "Put a bookmark between the pages.",
     "Close it and turn it upside down."),
    ("find out what time it is", "Look at a clock.", "Look at a calendar."),
    ("keep soup warm until dinner", "Keep the lid on the pot.",
     "Pour it into a wide bowl by an open window."),
    ("loosen an ordinary screw", "Turn it anticlockwise with a screwdriver.",
     "Turn it clockwise with a screwdriver."),
    ("tighten an ordinary screw", "Turn it clockwise with a screwdriver.",
     "Turn it anticlockwise with a screwdriver."),
    ("make a glass of lemonade sweeter", "Stir in some sugar.", "Squeeze in more lemon."),
    ("stop a sheet of paper from blowing off a desk", "Put a paperweight on it.",
     "Turn on a fan facing the desk."),
    ("get the wrinkles out of a shirt", "Iron it.", "Crumple it into a ball."),
    ("see inside a dark cupboard", "Shine a torch into it.", "Close the cupboard door."),
    ("cool a bedroom on a summer night", "Open windows on opposite sides to let a breeze through.",
     "Light a fire in the fireplace."),
    ("keep cheese from drying out in the fridge", "Wrap it tightly.",
     "Leave it unwrapped on an open plate."),
    ("catch a ball thrown to you", "Watch it and close your hands around it.",
     "Close your eyes and keep your hands down."),
    ("make sure a baby's bath is safe", "Check that the water is warm, not hot.",
     "Fill the bath with boiling water."),
    ("stop a tap from dripping", "Turn the tap firmly closed.", "Turn the tap on a little more."),
    ("make a bed neatly", "Spread the sheets flat and tuck them in.",
     "Throw the sheets on the floor."),
    ("check that a gas stove is off before leaving home", "Check that every knob points to off.",
     "Turn every knob to high."),
    ("pour juice without spilling it", "Hold the glass steady and pour slowly.",
     "Pour quickly from high above the glass."),
    ("fit more clothes into a suitcase", "Roll them up tightly.",
     "Pack them loosely with air between them."),
    ("stop a cut apple from turning brown", "Squeeze lemon juice on it.",
     "Leave it out in the warm air."),
    ("slice a loaf of bread", "Use a bread knife.", "Use a soup spoon."),
    ("keep candle wax off the table", "Stand the candle in a holder with a dish.",
     "Lay the candle on its side on the tablecloth."),
    ("steady a wobbly table", "Put a folded pad of paper under the short leg.",
     "Lean on the table harder."),
    ("lift a hot pot by its handle", "Use an oven glove.", "Grab it with wet bare fingers."),
    ("avoid disturbing people while on the phone on a train", "Speak softly.",
     "Shout into the phone."),
    ("reach a high shelf safely", "Stand on a sturdy step stool.",
     "Stand on a wobbly stack of pillows."),
    ("remember a new phone number", "Write it down.", "Hear it once and never repeat it."),
    ("stop frost forming on a car windscreen overnight", "Cover the glass with a sheet.",
     "Pour water over the glass in the evening."),
    ("water the plants in a garden", "Use a watering can.", "Use a colander."),
    ("clean a fresh juice spill on a carpet", "Blot it with a clean cloth.",
     "Rub soil into it."),
    ("slow down on a bicycle", "Squeeze the brakes.", "Pedal faster."),
    ("soften a hard block of butter", "Cut it into small pieces and leave it at room temperature.",
     "Put it in the freezer."),
    ("keep a door propped open", "Wedge a doorstop under it.", "Close it and lock it."),
    ("open a stuck drawer", "Pull it gently while wiggling it from side to side.",
     "Push it further in and glue it shut."),
    ("avoid making soup too salty", "Add salt a little at a time and taste it.",
     "Pour in the whole box of salt at once."),
    ("stop a moving car", "Press the brake pedal.", "Press the accelerator pedal."),
    ("find your way along a dark path at night", "Carry a flashlight.",
     "Wear dark sunglasses."),
    ("stay afloat in deep water if you cannot swim", "Wear a life jacket.",
     "Wear heavy boots."),
    ("make sure a letter reaches the right house", "Write the full address clearly.",
     "Leave the envelope blank."),
    ("turn off a computer safely", "Choose the shut down option.", "Pour water on it."),
    ("wake a sleeping cat gently", "Speak softly and stroke it.", "Drop a pan beside it."),
    ("keep your hands clean while gardening", "Wear gloves.", "Dig with wet bare hands."),
    ("thaw frozen peas quickly", "Rinse them under warm water.", "Put them back in the freezer."),
    ("keep flies off food at a picnic", "Cover the dishes.", "Leave the food open in the sun."),
    ("cross a busy road safely", "Wait for the green pedestrian light.",
     "Run across while the cars are moving."),
    ("keep a notebook dry in a backpack on a rainy day", "Put it in a plastic bag inside the backpack.",
     "Tuck it into the outside mesh pocket."),
    ("warm up a cold room", "Turn on the heater.", "Open the freezer door."),
    ("flatten a rolled-up poster", "Lay it flat under heavy books.",
     "Roll it tighter and keep it in a tube."),
    ("clean your glasses", "Wipe them with a soft clean cloth.", "Rub them with sandpaper."),
    ("keep rice from sticking to the bottom of the pot", "Stir it and cook it on low heat.",
     "Cook it dry on the highest heat."),
    ("make a room brighter during the day", "Open the curtains.", "Close the shutters."),
    ("tell whether a bath is too hot", "Test the water with your elbow first.",
     "Jump in without checking."),
    ("get a tangle out of long hair", "Comb it gently from the ends upward.",
     "Pull the brush hard from the roots."),
]

# (question, correct answer, wrong answers...)
WORD_FACTS = [
    ("How many days are there in a week?", "seven", "five", "ten", "twelve"),
    ("Which month comes right after March?", "April", "February", "June", "October"),
    ("What is the opposite of cold?", "hot", "wet", "blue", "slow"),
    ("What is the plural of child?", "children", "childs", "childes", "childrens"),
    ("How many legs does a spider have?", "eight", "six", "four", "ten"),
    ("What colour is a clear sky at noon?", "blue", "red", "black", "brown"),
    ("Which of these animals is the largest?", "a horse", "a mouse", "a cat", "an ant"),
    ("How many minutes are there in an hour?", "sixty", "one hundred", "thirty",
     "twenty-four"),
    ("How many hours are there in a day?", "twenty-four", "twelve", "sixty", "seven"),
    ("What is frozen water called?", "ice", "steam", "sand", "smoke"),
    ("Which animal says moo?", "a cow", "a cat", "a duck", "a dog"),
    ("Which planet do people live on?", "Earth", "Mars", "Venus", "Jupiter"),
    ("Which day comes right after Monday?", "Tuesday", "Sunday", "Friday", "Thursday"),
    ("How many sides does a triangle have?", "three", "four", "five", "six"),
    ("How many sides does a square have?", "four", "three", "five", "eight"),
    ("What do bees make?", "honey", "milk", "wool", "butter"),
    ("What is the past tense of go?", "went", "goed", "going", "goes"),
    ("What is the opposite of up?", "down", "left", "over", "high"),
    ("What is the opposite of early?", "late", "soon", "first", "quick"),
    ("What is the opposite of full?", "empty", "heavy", "round", "large"),
    ("What is the plural of mouse?", "mice", "mouses", "meese", "mousen"),
    ("What is the plural of foot?", "feet", "foots", "footes", "feets"),
    ("What is the plural of tooth?", "teeth", "tooths", "toothes", "teeths"),
    ("What is a young dog called?", "a puppy", "a kitten", "a calf", "a foal"),
    ("What is a young cat called?", "a kitten", "a puppy", "a lamb", "a chick"),
    ("How many wheels does a bicycle have?", "two", "three", "four", "six"),
    ("How many months are there in a year?", "twelve", "ten", "seven", "fifty-two"),
    ("Which season comes right after summer?", "autumn", "spring", "winter", "summer again"),
    ("What is the capital city of France?", "Paris", "Rome", "Madrid", "Berlin"),
    ("At how many degrees Celsius does pure water freeze at sea level?", "0", "100", "50",
     "37"),
    ("At how many degrees Celsius does pure water boil at sea level?", "100", "0", "50", "37"),
    ("How many letters are there in the English alphabet?", "26", "24", "30", "52"),
    ("Which of these is a fruit?", "an apple", "a carrot", "a potato", "an onion"),
    ("Which of these is a colour?", "green", "seven", "table", "quickly"),
    ("Which of these words is a number?", "nine", "blue", "chair", "run"),
    ("Which word rhymes with cat?", "hat", "dog", "cup", "sun"),
    ("Which word rhymes with tree?", "bee", "rock", "hand", "lamp"),
    ("Which of these animals can fly?", "an eagle", "a horse", "a cow", "a snail"),
    ("Which body part do you use to see?", "your eyes", "your ears", "your nose",
     "your knees"),
    ("Which body part do you use to hear?", "your ears", "your eyes", "your elbows",
     "your toes"),
    ("What is half of ten?", "five", "two", "twenty", "four"),
    ("What is double six?", "twelve", "three", "eight", "sixty"),
    ("Which shape is perfectly round?", "a circle", "a square", "a triangle", "a rectangle"),
    ("Which weighs more?", "one kilogram", "one gram", "one milligram", "half a gram"),
    ("Which is longer?", "one metre", "one centimetre", "one millimetre", "half a centimetre"),
    ("How many centimetres are there in a metre?", "100", "10", "12", "1000"),
    ("How many seconds are there in a minute?", "60", "100", "30", "24"),
    ("What is the first letter of the English alphabet?", "A", "Z", "M", "E"),
    ("What is the last letter of the English alphabet?", "Z", "A", "Y", "X"),
    ("Which of these numbers is even?", "8", "3", "5", "7"),
    ("Which of these numbers is odd?", "9", "2", "4", "6"),
    ("In which direction does the sun rise?", "east", "west", "north", "south"),
    ("Which of these is used for writing?", "a pencil", "a spoon", "a pillow", "a shoe"),
    ("Which colour do you get by mixing blue and yellow paint?", "green", "purple", "orange",
     "black"),
    ("What is the opposite of happy?", "sad", "tall", "loud", "new"),
    ("Which animal runs the fastest?", "a cheetah", "a snail", "a tortoise", "a sloth"),
    ("Which meal is eaten in the morning?", "breakfast", "dinner", "supper", "lunch"),
    ("What is the past tense of eat?", "ate", "eated", "eating", "eats"),
    ("What is the past tense of run?", "ran", "runned", "running", "runs"),
    ("Which word means the same as big?", "large", "tiny", "thin", "short"),
    ("How many legs does a bird have?", "two", "four", "six", "eight"),
    ("How many legs does a dog have?", "four", "two", "six", "eight"),
    ("Which of these is a vegetable?", "a carrot", "a banana", "a cherry", "a grape"),
    ("What do you call the meal eaten in the evening?", "dinner", "breakfast", "brunch",
     "elevenses"),
]

# (question, correct answer, wrong answers...): Python 3 and its documentation
PYTHON = [
    ("Which keyword starts a function definition in Python?", "def", "func", "function",
     "define"),
    ("Which keyword starts a class definition in Python?", "class", "struct", "object",
     "record"),
    ("Which built-in function returns the number of items in a list?", "len", "size",
     "length", "total"),
    ("Which built-in function writes text to standard output?", "print", "echo", "write",
     "say"),
    ("Which built-in function reads a line typed by the user?", "input", "read", "scan",
     "getline"),
    ("What is the value of 7 // 2 in Python?", "3", "3.5", "4", "1"),
    ("What is the value of 7 % 3 in Python?", "1", "2", "0", "3"),
    ("What is the value of 2 ** 3 in Python?", "8", "6", "9", "5"),
    ("What does the expression 3 == 3 evaluate to?", "True", "False", "None", "3"),
    ("What is the type of the literal 3.0?", "float", "int", "str", "bool"),
    ("What is the type of the literal 'abc'?", "str", "list", "bytes", "char"),
    ("What is the type of the literal [1, 2]?", "list", "tuple", "dict", "set"),
    ("What is the type of the literal (1, 2)?", "tuple", "list", "dict", "set"),
    ("What is the type of the literal {'a': 1}?", "dict", "list", "tuple", "str"),
    ("Which statement ends the nearest enclosing loop at once?", "break", "continue", "pass",
     "yield"),
    ("Which statement skips to the next iteration of a loop?", "continue", "break", "pass",
     "del"),
    ("Which statement does nothing and serves as a placeholder?", "pass", "None", "skip",
     "void"),
    ("Which keyword introduces the clause that handles an exception raised in a try block?",
     "except", "catch", "rescue", "handle"),
    ("Which keyword raises an exception?", "raise", "throw", "except", "error"),
    ("Which keyword loads a module so that its names can be used?", "import", "include",
     "require", "using"),
    ("What is the result of len('hello')?", "5", "4", "6", "0"),
    ("What does 'abc'.upper() return?", "'ABC'", "'abc'", "'Abc'", "'aBC'"),
    ("What does ' hi '.strip() return?", "'hi'", "' hi'", "'hi '", "' hi '"),
    ("What does [1, 2, 3][0] return?", "1", "2", "3", "0"),
    ("What does [1, 2, 3][-1] return?", "3", "1", "2", "-1"),
    ("Which list method adds one item to the end of a list?", "append", "add", "push",
     "put"),
    ("Which set method adds one element to a set?", "add", "append", "push", "put"),
    ("Which dictionary method returns a view of its keys?", "keys", "values", "names",
     "labels"),
    ("What is the value of bool(0)?", "False", "True", "None", "0"),
    ("What is the value of bool('')?", "False", "True", "None", "''"),
    ("Which built-in produces the integers 0, 1 and 2 when called with the argument 3?",
     "range", "len", "abs", "round"),
    ("Which built-in pairs up the items of two iterables?", "zip", "map", "pair", "join"),
    ("Which built-in applies a function to every item of an iterable and yields the results?",
     "map", "zip", "apply", "each"),
    ("Which built-in keeps only the items for which a function returns true?", "filter",
     "map", "zip", "keep"),
    ("Which built-in returns a new sorted list from an iterable?", "sorted", "order",
     "arrange", "rank"),
    ("Which list method sorts the list in place?", "sort", "sorted", "order", "arrange"),
    ("Which built-in returns True only when every element of an iterable is true?", "all",
     "any", "every", "each"),
    ("Which built-in returns True when at least one element of an iterable is true?", "any",
     "all", "some", "one"),
    ("What does list(range(3)) return?", "[0, 1, 2]", "[1, 2, 3]", "[0, 1, 2, 3]", "[3]"),
    ("Which operator tests whether a value is an item of a list?", "in", "has", "of", "at"),
    ("Which operator tests whether two names refer to the very same object?", "is", "==",
     "===", "eq"),
    ("Which keyword creates a small anonymous function?", "lambda", "def", "func", "anon"),
    ("Which keyword inside a function makes it a generator?", "yield", "return", "gen",
     "await"),
    ("Which statement makes sure a file is closed when its block ends?", "with", "using",
     "open", "close"),
    ("Which mode string opens a text file for reading?", "'r'", "'w'", "'a'", "'x'"),
    ("Which mode string opens a text file for writing, replacing its contents?", "'w'", "'r'",
     "'a'", "'x'"),
    ("Which mode string opens a text file for appending at its end?", "'a'", "'r'", "'w'",
     "'x'"),
    ("Which built-in returns the absolute value of a number?", "abs", "absolute", "positive",
     "magnitude"),
    ("Which built-in returns the largest item of an iterable?", "max", "big", "top",
     "largest"),
    ("Which built-in returns the smallest item of an iterable?", "min", "small", "bottom",
     "least"),
    ("Which built-in adds up the numbers of an iterable?", "sum", "add", "total", "plus"),
    ("Which built-in turns the string '42' into the integer 42?", "int", "str", "chr",
     "list"),
    ("Which built-in turns the integer 42 into the string '42'?", "str", "int", "ord",
     "bool"),
    ("Which built-in returns the type of an object?", "type", "kind", "sort", "class"),
    ("Which built-in checks whether an object is an instance of a class?", "isinstance",
     "type", "instanceof", "isclass"),
    ("Which built-in returns the Unicode code point of a one-character string?", "ord", "chr",
     "code", "num"),
    ("Which built-in returns the one-character string of a Unicode code point?", "chr", "ord",
     "char", "letter"),
    ("Which method is called to initialise a new instance of a class?", "__init__",
     "__start__", "__create__", "__begin__"),
    ("Which special method does the built-in len() call?", "__len__", "__size__",
     "__count__", "__length__"),
    ("Which special method implements the + operator?", "__add__", "__plus__", "__sum__",
     "__append__"),
    ("Which special method implements the == operator?", "__eq__", "__equals__", "__same__",
     "__is__"),
    ("What is the first parameter of an ordinary method conventionally named?", "self",
     "this", "me", "it"),
    ("Which decorator makes a method receive the class as its first argument?",
     "classmethod", "staticmethod", "property", "wraps"),
    ("Which decorator lets a method be read like an attribute?", "property", "classmethod",
     "staticmethod", "dataclass"),
    ("Which statement removes a name binding or a list item?", "del", "remove", "erase",
     "drop"),
    ("Which statement raises AssertionError when its condition is false?", "assert", "check",
     "verify", "ensure"),
    ("Which exception does dividing a number by zero raise?", "ZeroDivisionError",
     "ValueError", "IndexError", "KeyError"),
    ("Which exception does indexing past the end of a list raise?", "IndexError", "KeyError",
     "ValueError", "TypeError"),
    ("Which exception does looking up a missing key in a dict raise?", "KeyError",
     "IndexError", "ValueError", "NameError"),
    ("Which exception does int('abc') raise?", "ValueError", "KeyError", "IndexError",
     "ZeroDivisionError"),
    ("Which exception does using an undefined variable raise?", "NameError", "KeyError",
     "IndexError", "ZeroDivisionError"),
    ("Which exception does accessing a missing attribute of an object raise?",
     "AttributeError", "KeyError", "IndexError", "ZeroDivisionError"),
    ("Which exception signals that an iterator has no further items?", "StopIteration",
     "EndOfLoop", "BreakError", "KeyError"),
    ("What does 'a' + 'b' evaluate to?", "'ab'", "'a b'", "'ba'", "'a+b'"),
    ("What does 'ab' * 2 evaluate to?", "'abab'", "'ab2'", "'aabb'", "'ab ab'"),
    ("What does 'a,b'.split(',') return?", "['a', 'b']", "['a,b']", "'ab'",
     "['a', ',', 'b']"),
    ("What does '-'.join(['a', 'b']) return?", "'a-b'", "'ab'", "'-ab'", "'a-b-'"),
    ("Which keyword introduces another condition after an if clause?", "elif", "elseif",
     "orif", "when"),
    ("Which object represents the absence of a value?", "None", "Null", "nil", "void"),
    ("What are the two Boolean constants?", "True and False", "yes and no", "on and off",
     "Yes and No"),
    ("Which character starts a comment?", "#", "//", "--", ";"),
    ("Which standard module provides sqrt, floor and pi?", "math", "numbers", "calc", "arith"),
    ("Which standard module generates pseudo-random numbers?", "random", "chance", "rand",
     "dice"),
    ("Which standard module holds argv, the list of command-line arguments?", "sys", "math",
     "json", "time"),
    ("Which standard module reads and writes JSON?", "json", "csv", "math", "sys"),
    ("Which standard module provides date and time objects?", "datetime", "json", "math",
     "random"),
    ("What does 10 / 4 evaluate to in Python 3?", "2.5", "2", "3", "2.0"),
    ("What does 1 + 2 * 3 evaluate to?", "7", "9", "6", "5"),
    ("What is the index of the first item of a list?", "0", "1", "-1", "None"),
    ("What does 'Python'[1:3] return?", "'yt'", "'Py'", "'yth'", "'ty'"),
    ("Which loop repeats for as long as a condition stays true?", "while", "for", "repeat",
     "until"),
    ("Which built-in opens a file and returns a file object?", "open", "file", "load", "path"),
    ("What does list.pop() remove when called without an argument?", "the last item",
     "the first item", "every item", "a random item"),
    ("What does d.get(key, default) return when key is not in the dict d?", "default",
     "an error", "the key", "an empty list"),
    ("What does [x * x for x in range(4)] evaluate to?", "[0, 1, 4, 9]", "[1, 4, 9, 16]",
     "[0, 2, 4, 6]", "[0, 1, 2, 3]"),
    ("What does 'hello'.startswith('he') return?", "True", "False", "'he'", "0"),
    ("What does 'banana'.count('a') return?", "3", "2", "1", "6"),
    ("What does sorted([3, 1, 2]) return?", "[1, 2, 3]", "[3, 2, 1]", "[3, 1, 2]", "6"),
    ("What does max([4, 9, 2]) return?", "9", "4", "2", "15"),
    ("What does abs(-5) return?", "5", "-5", "0", "25"),
    ("What does the keyword async mark a function as?", "a coroutine function",
     "a generator of numbers", "a constant", "a private method"),
    ("What does the return statement do?", "leaves the function with a value",
     "restarts the loop", "imports a module", "prints a value"),
]


def arithmetic(rng: random.Random) -> list[tuple]:
    """Sums, differences and products of small numbers, with near-miss wrong answers."""
    items, seen = [], set()
    for kind in ("plus", "minus", "times"):
        while len(items) < {"plus": 20, "minus": 40, "times": 60}[kind]:
            if kind == "plus":
                a, b = rng.randint(10, 49), rng.randint(10, 49)
                answer = a + b
            elif kind == "minus":
                a = rng.randint(20, 99)
                b = rng.randint(1, a - 5)
                answer = a - b
            else:
                a, b = rng.randint(2, 12), rng.randint(2, 12)
                answer = a * b
            if (a, kind, b) in seen:
                continue
            seen.add((a, kind, b))
            wrong = []
            for delta in rng.sample([-10, -2, -1, 1, 2, 10], 6):
                if answer + delta > 0 and len(wrong) < 3:
                    wrong.append(str(answer + delta))
            items.append((f"What is {a} {kind} {b}?", str(answer), *wrong))
    return items


def rows(name: str, items: list[tuple], rng: random.Random) -> list[dict]:
    """One JSON row per item: the choices shuffled, `label` = index of the correct one."""
    out = []
    for i, (question, correct, *wrong) in enumerate(items):
        choices = [correct, *wrong]
        rng.shuffle(choices)
        out.append({"id": f"{name}-{i + 1:03d}", "question": question, "choices": choices,
                    "label": choices.index(correct)})
    return out


def task_yaml(name: str, text: str, description: str) -> dict:
    """lm-eval task config; data_files is relative to the YAML's folder (resolved by
    surgeon.zeroshot)."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": text,
        "doc_to_target": "label",
        "doc_to_choice": "choices",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0, "description": description,
                     "generated_by": "scripts/make_zeroshot_tasks.py"},
    }


def tasks() -> dict[str, tuple[dict, list[dict]]]:
    """name -> (task config, rows), deterministic."""
    rng = random.Random(SEED)
    physical = [(f"How can you {goal}?", right, wrong) for goal, right, wrong in PHYSICAL]
    facts = arithmetic(rng) + WORD_FACTS
    question = "Question: {{question}}\nAnswer:"
    return {
        "surgeon_physical": (
            task_yaml("surgeon_physical", question,
                      "everyday physical commonsense: the sensible of two ways to reach a goal"),
            rows("physical", physical, rng)),
        "surgeon_facts": (
            task_yaml("surgeon_facts", question,
                      "small-number arithmetic and everyday word facts, four choices"),
            rows("facts", facts, rng)),
        "surgeon_python": (
            task_yaml("surgeon_python", question,
                      "Python 3 language and standard-library facts, four choices"),
            rows("python", PYTHON, rng)),
    }


class _Dumper(yaml.SafeDumper):
    """Double-quoted style for strings with a newline (readable prompt templates)."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style='"' if "\n" in s else None))


def rendered() -> dict[Path, str]:
    """Relative path -> file text of every task file."""
    files = {}
    for name, (config, items) in tasks().items():
        folder = Path("resources/tasks") / name
        files[folder / f"{name}.yaml"] = (
            "# Generated by scripts/make_zeroshot_tasks.py; items written for this project.\n"
            + yaml.dump(config, Dumper=_Dumper, sort_keys=False))
        files[folder / f"{name}.jsonl"] = "".join(json.dumps(r) + "\n" for r in items)
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    args = p.parse_args(argv)
    stale = []
    for rel, text in rendered().items():
        path = ROOT / rel
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(rel))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print(f"out of date (run scripts/make_zeroshot_tasks.py): {', '.join(stale)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
