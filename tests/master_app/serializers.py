from rest_framework import serializers

from tests.master_app.models import SerializedBook, Shelf


class SerializedBookSerializer(serializers.ModelSerializer):
    class Meta:
        model = SerializedBook
        fields = ['id', 'title', 'price']


class ShelfSerializer(serializers.ModelSerializer):
    books = serializers.SlugRelatedField(many=True, read_only=True, slug_field='title')

    class Meta:
        model = Shelf
        fields = ['id', 'name', 'books']
