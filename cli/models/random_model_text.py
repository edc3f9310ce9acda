"""A short English text, written for this project, on which the random test models' tokenizer is
trained (cli/models/random_model.py)."""

TRAINING_TEXT = """\
The morning train leaves the station at seven, and most of the people on it are going to work.
A woman by the window reads a book about the history of the sea. A man next to her writes a
list of things he needs to buy: bread, milk, three apples, a new pen and a small lamp.
Outside, the fields are green and the sky is clear. It will be a warm day.

When the train stops in the city, everyone gets off at once. The streets are full of noise.
Cars wait at the lights, a dog barks at a bicycle, and a child asks her father why the
buildings are so tall. He says that people wanted to live close to each other, and the only
way to fit them all was to build up into the sky.

In the kitchen of a small restaurant, the cook is making soup. She cuts onions, carrots and
potatoes, puts them into a large pot with water and salt, and lets it boil for an hour.
"Good food takes time," she tells the new helper. "If you hurry, the taste is never right."
The helper nods and writes the recipe in a notebook so that he will not forget it.

Numbers are useful for many things. One plus one is two. Two times three is six. Ten minus
four is six as well. There are 24 hours in a day, 7 days in a week and 12 months in a year.
The year 2024 had 366 days, because it was a leap year. Prices in the market were 1.50 for
a loaf of bread and 0.75 for a cup of coffee.

Question: What is the capital of France?
Answer: The capital of France is Paris.
Question: How many legs does a spider have?
Answer: A spider has eight legs.
Question: Why is the sky blue?
Answer: Sunlight is scattered by the air, and blue light is scattered the most.

A computer program is a list of instructions. The computer follows them one by one, very
fast, and never gets tired. If the instructions are wrong, the program does the wrong thing,
and the person who wrote it must find the mistake. This is called debugging. Good programmers
write small tests that check each part of the program, so that mistakes are found early.

def add(a, b):
    return a + b

for i in range(10):
    print(i, add(i, i))

The old library at the end of the street has thousands of books. Some of them are very old,
with yellow pages and heavy covers. Students come in the afternoon to study, and the
librarian helps them find what they are looking for. On rainy days the reading room is
quiet and warm, and the only sound is the turning of pages.

In the evening, the family sits together at the table. They talk about their day: the
daughter learned about planets at school, the son played football with his friends, and the
parents had long meetings at work. After dinner they wash the dishes, take the dog for a
walk, and watch the stars come out one after another.

Hello! How are you today? I am fine, thank you. It is nice to meet you. Could you help me,
please? Of course, I would be happy to help. Thank you very much. You are welcome.
Yes, no, maybe, always, never, sometimes, often, rarely, soon, later, now, then, here, there.
"""
