from rest_framework import serializers

from tests.master_app.models import SerializedBook


class SerializedBookSerializer(serializers.ModelSerializer):
    class Meta:
        model = SerializedBook
        fields = ['id', 'title', 'price']
